// The ICH ensemble viewer: plain JavaScript over the public API, nothing loaded from elsewhere.
// State lives in one object; every picture is a PNG the gateway renders from the job's stored study.
"use strict";

const MODELS = ["all", "subtype", "sdh", "sah", "small"];
const MODEL_COLOURS = { all: "#1f77b4", subtype: "#2ca02c", sdh: "#9467bd", sah: "#ff7f0e", small: "#17becf" };
const POLL_MS = 1000;
const SUBTYPES = ["epidural", "subdural", "subarachnoid", "intraparenchymal", "intraventricular"];
const CURVE = { width: 800, height: 220, left: 34, right: 10, top: 10, bottom: 24 };

const state = { id: null, result: null, index: 0, count: 0, pictures: new Map(), token: 0, outputRoutes: null };
const $ = (id) => document.getElementById(id);

function apiHeaders(extra) {
  const headers = Object.assign({}, extra || {});
  const key = sessionStorage.getItem("ich-api-key");
  if (key) headers.Authorization = "Bearer " + key;
  return headers;
}

async function api(path, options) {
  const opts = Object.assign({}, options || {});
  opts.headers = apiHeaders(opts.headers);
  return fetch(path, opts);
}

async function errorText(response) {
  try {
    const body = await response.json();
    return `${response.status} ${body.code}: ${body.detail}`;
  } catch (_) {
    return `${response.status} ${response.statusText}`;
  }
}

function setStatus(text, isError) {
  const el = $("status");
  el.textContent = text;
  el.classList.toggle("error", Boolean(isError));
}

function pct(p) { return (100 * p).toFixed(1) + " %"; }

// ---------------------------------------------------------------------------------------- opening a study

async function upload(file) {
  setStatus("Uploading " + file.name + " ...");
  const response = await api("/v1/studies?include=seg,overlays", {
    method: "POST", body: file, headers: { "Content-Type": "application/zip" },
  });
  if (response.status !== 202) { setStatus("Upload refused: " + await errorText(response), true); return; }
  const job = await response.json();
  history.replaceState(null, "", "/viewer?study=" + encodeURIComponent(job.id));
  await openStudy(job.id);
}

async function openStudy(id) {
  state.id = id;
  $("study-id").value = id;
  for (;;) {
    if (state.id !== id) return;  // another study was opened meanwhile
    const response = await api("/v1/studies/" + encodeURIComponent(id));
    if (!response.ok) { setStatus("Cannot open the study: " + await errorText(response), true); return; }
    const job = await response.json();
    if (job.status === "done") { setStatus(""); show(job.result); return; }
    if (job.status === "failed") {
      const error = job.error || {};
      setStatus(`The analysis failed: ${error.code}: ${error.detail}`, true);
      return;
    }
    setStatus(`Study ${job.status} (attempt ${job.attempts}) ...`);
    await new Promise((resolve) => setTimeout(resolve, POLL_MS));
  }
}

// ---------------------------------------------------------------------------------------- the result

function fact(dl, name, value) {
  const dt = document.createElement("dt");
  dt.textContent = name;
  const dd = document.createElement("dd");
  dd.textContent = value;
  dd.dataset.fact = name;
  dl.append(dt, dd);
}

function showFacts(r) {
  const dl = $("facts");
  dl.replaceChildren();
  fact(dl, "case probability", pct(r.ich_probability));
  fact(dl, "finding", r.ich_detected ? "hemorrhage suspected" : "no hemorrhage found");
  fact(dl, "threshold", r.threshold.toFixed(3));
  fact(dl, "indeterminate band", `${r.indeterminate_band[0].toFixed(3)} - ${r.indeterminate_band[1].toFixed(3)}`);
  fact(dl, "highest slice probability", pct(r.max_slice_probability));
  if (r.uncertainty !== undefined && r.uncertainty !== null) {
    fact(dl, "uncertainty", `${r.uncertainty.toFixed(3)} (spread of the five base models, 0 - 0.5)`);
  }
  fact(dl, "hemorrhage volume", r.hemorrhage_volume_ml.toFixed(2) + " mL");
  fact(dl, "slices", String(r.slices.length));
  fact(dl, "slice spacing", r.series.slice_thickness_mm.toFixed(2) + " mm");
  fact(dl, "model", `${r.model_version} (${r.engine})`);
  const band = $("indeterminate");
  band.hidden = !r.indeterminate;
  band.textContent = r.indeterminate
    ? `Indeterminate: the case probability ${r.ich_probability.toFixed(3)} lies in the band ` +
      `[${r.indeterminate_band[0].toFixed(3)}, ${r.indeterminate_band[1].toFixed(3)}]; a person should read this study first.`
    : "";
  const warnings = $("warnings");
  warnings.replaceChildren(...(r.warnings || []).map((w) => {
    const li = document.createElement("li");
    li.textContent = w;
    return li;
  }));
  const note = $("mask-note");
  note.hidden = Boolean(r.seg) || r.hemorrhage_volume_ml === 0;
  note.textContent = note.hidden ? "" :
    "No mask was kept with this job (it was queued without include=seg), so no outline can be drawn.";
}

function download(name, label, blob) {
  const li = document.createElement("li");
  const a = document.createElement("a");
  a.href = URL.createObjectURL(blob);
  a.download = name;
  a.textContent = label;
  li.append(a);
  $("downloads").append(li);
}

function base64Blob(data, type) {
  const bytes = Uint8Array.from(atob(data), (c) => c.charCodeAt(0));
  return new Blob([bytes], { type });
}

async function showDownloads(r) {
  $("downloads").replaceChildren();
  const id = state.id;
  download(`ich-result-${id}.json`, "result (JSON)", new Blob([JSON.stringify(r, null, 2)], { type: "application/json" }));
  // The DICOM outputs of the job, where this gateway has their routes (its OpenAPI says which); the SEG
  // also travels inside the result.
  const routes = await outputRoutes();
  const outputs = [["seg", "DICOM SEG (mask)"], ["sr", "DICOM SR (report)"], ["key-images", "key images (DICOM)"]];
  for (const [path, label] of outputs) {
    let blob = null;
    if (routes.has(path)) {
      const response = await api(`/v1/studies/${encodeURIComponent(id)}/${path}`);
      if (response.ok) blob = await response.blob();
    }
    if (state.id !== id) return;
    if (!blob && path === "seg" && r.seg) blob = base64Blob(r.seg.data_base64, "application/dicom");
    if (blob) download(`ich-${path}-${id}.dcm`, label, blob);
  }
}

async function outputRoutes() {
  if (!state.outputRoutes) {
    state.outputRoutes = fetch("/openapi.json")
      .then((response) => (response.ok ? response.json() : { paths: {} }))
      .then((spec) => new Set(Object.keys(spec.paths || {})
        .map((path) => (path.match(/^\/v1\/studies\/\{study_id\}\/([a-z-]+)$/) || [])[1])
        .filter(Boolean)))
      .catch(() => new Set());
  }
  return state.outputRoutes;
}

function show(r) {
  state.result = r;
  state.count = r.slices.length;
  state.pictures.forEach((url) => URL.revokeObjectURL(url));
  state.pictures.clear();
  $("study").hidden = false;
  const slider = $("slider");
  slider.max = String(Math.max(0, state.count - 1));
  showFacts(r);
  drawCurve(r);
  showDownloads(r);
  // Start where the ensemble is most certain: the slice a reader would look at first.
  let peak = 0;
  r.slices.forEach((s, i) => { if (s.probability > r.slices[peak].probability) peak = i; });
  showSlice(peak);
}

// ---------------------------------------------------------------------------------------- one slice

function sliceUrl(index) {
  const win = $("window").value;
  const outline = $("outline").checked ? "true" : "false";
  return `/v1/studies/${encodeURIComponent(state.id)}/slices/${index}.png?window=${win}&outline=${outline}`;
}

async function picture(index) {
  const url = sliceUrl(index);
  if (state.pictures.has(url)) return state.pictures.get(url);
  const response = await api(url);
  if (!response.ok) throw new Error(await errorText(response));
  const objectUrl = URL.createObjectURL(await response.blob());
  state.pictures.set(url, objectUrl);
  return objectUrl;
}

async function showSlice(index) {
  if (!state.result || state.count === 0) return;
  const i = Math.max(0, Math.min(state.count - 1, index));
  state.index = i;
  $("slider").value = String(i);
  $("slice-label").textContent = `slice ${i + 1} / ${state.count}`;
  showSliceTable(state.result.slices[i]);
  showSubtypes(state.result, state.result.slices[i]);
  moveCursor(i);
  const token = ++state.token;
  const img = $("slice");
  try {
    const url = await picture(i);
    if (token !== state.token) return;  // the reader moved on while this one loaded
    await new Promise((resolve) => { img.onload = resolve; img.onerror = resolve; img.src = url; });
    if (token !== state.token) return;
    img.alt = `CT slice ${i + 1} of ${state.count}`;
    img.dataset.index = String(i);
    img.dataset.window = $("window").value;
    img.dataset.outline = String($("outline").checked);
    for (const next of [i + 1, i - 1]) {  // the neighbours, so scrolling does not wait
      if (next >= 0 && next < state.count) picture(next).catch(() => {});
    }
  } catch (error) {
    if (token === state.token) setStatus("Cannot draw the slice: " + error.message, true);
  }
}

function showSliceTable(s) {
  const rows = MODELS.map((m) => {
    const tr = document.createElement("tr");
    for (const text of [m, s.model_probabilities[m].toFixed(3), s.weights[m].toFixed(3)]) {
      const td = document.createElement("td");
      td.textContent = text;
      tr.append(td);
    }
    return tr;
  });
  const fused = document.createElement("tr");
  for (const text of ["fused", s.probability.toFixed(3), ""]) {
    const td = document.createElement("th");
    td.textContent = text;
    fused.append(td);
  }
  $("slice-table").tBodies[0].replaceChildren(...rows, fused);
}

// Subtypes: the case's and this slice's probability of each; a subtype the model does not measure says so
// rather than showing a number, and a model without subtypes hides the table.
function showSubtypes(r, s) {
  const note = $("subtype-note");
  const table = $("subtype-table");
  table.hidden = !r.subtypes;
  note.hidden = Boolean(r.subtypes);
  note.textContent = r.subtypes ? "" : "This model gives no subtypes.";
  if (!r.subtypes) { table.tBodies[0].replaceChildren(); return; }
  const value = (v) => (v === null || v === undefined ? "not measured" : pct(v));
  const rows = SUBTYPES.map((name) => {
    const tr = document.createElement("tr");
    tr.dataset.subtype = name;
    for (const text of [name, value(r.subtypes[name]), value(s.subtypes ? s.subtypes[name] : null)]) {
      const td = document.createElement("td");
      td.textContent = text;
      tr.append(td);
    }
    return tr;
  });
  table.tBodies[0].replaceChildren(...rows);
}

// ---------------------------------------------------------------------------------------- the curve

const SVG = "http://www.w3.org/2000/svg";

function svg(name, attributes) {
  const el = document.createElementNS(SVG, name);
  for (const [k, v] of Object.entries(attributes)) el.setAttribute(k, String(v));
  return el;
}

function xOf(i) {
  const span = CURVE.width - CURVE.left - CURVE.right;
  return CURVE.left + (state.count > 1 ? (i * span) / (state.count - 1) : span / 2);
}

function yOf(p) {
  return CURVE.top + (1 - p) * (CURVE.height - CURVE.top - CURVE.bottom);
}

function polyline(values, cls, colour) {
  const points = values.map((p, i) => `${xOf(i).toFixed(1)},${yOf(p).toFixed(1)}`).join(" ");
  const attributes = { class: cls, points };
  if (colour) attributes.stroke = colour;
  return svg("polyline", attributes);
}

function drawCurve(r) {
  const curve = $("curve");
  curve.replaceChildren();
  const [lo, hi] = r.indeterminate_band;
  const x0 = CURVE.left, x1 = CURVE.width - CURVE.right;
  curve.append(svg("rect", { class: "band", x: x0, y: yOf(hi), width: x1 - x0, height: yOf(lo) - yOf(hi) }));
  for (const p of [0, 0.5, 1]) {
    const label = svg("text", { x: 4, y: yOf(p) + 4 });
    label.textContent = p.toFixed(1);
    curve.append(label, svg("line", { x1: x0, x2: x1, y1: yOf(p), y2: yOf(p), stroke: "#eee" }));
  }
  curve.append(svg("line", { class: "threshold", x1: x0, x2: x1, y1: yOf(r.threshold), y2: yOf(r.threshold) }));
  for (const m of MODELS) {
    curve.append(polyline(r.slices.map((s) => s.model_probabilities[m]), "member", MODEL_COLOURS[m]));
  }
  curve.append(polyline(r.slices.map((s) => s.probability), "fused"));
  r.slices.forEach((s, i) => {
    const point = svg("circle", { class: "pt", cx: xOf(i), cy: yOf(s.probability), r: 3.5 });
    point.dataset.index = String(i);
    point.dataset.probability = String(s.probability);
    const title = svg("title", {});
    title.textContent = `slice ${i + 1}: ${s.probability.toFixed(3)}`;
    point.append(title);
    curve.append(point);
  });
  curve.append(svg("line", { class: "cursor", id: "cursor", x1: 0, x2: 0, y1: CURVE.top, y2: CURVE.height - CURVE.bottom }));
  const first = svg("text", { x: x0, y: CURVE.height - 6 });
  first.textContent = "1 (feet)";
  const last = svg("text", { x: x1 - 60, y: CURVE.height - 6 });
  last.textContent = `${state.count} (head)`;
  curve.append(first, last);
  const legend = [["fused", "#111"], ...MODELS.map((m) => [m, MODEL_COLOURS[m]]),
    ["threshold", "#b00020"], ["indeterminate band", "#f5b971"]];
  $("legend").replaceChildren(...legend.map(([name, colour]) => {
    const span = document.createElement("span");
    const swatch = document.createElement("i");
    swatch.style.background = colour;
    span.append(swatch, name);
    return span;
  }));
}

function moveCursor(i) {
  const cursor = $("cursor");
  if (!cursor) return;
  cursor.setAttribute("x1", xOf(i));
  cursor.setAttribute("x2", xOf(i));
}

function curveClick(event) {
  if (state.count === 0) return;
  const box = $("curve").getBoundingClientRect();
  const x = ((event.clientX - box.left) / box.width) * CURVE.width;
  const span = CURVE.width - CURVE.left - CURVE.right;
  const i = state.count > 1 ? Math.round(((x - CURVE.left) / span) * (state.count - 1)) : 0;
  showSlice(i);
}

// ---------------------------------------------------------------------------------------- input

function onKey(event) {
  const target = event.target;
  // The slider and the form fields handle their own arrow keys.
  if (target instanceof HTMLInputElement || target instanceof HTMLSelectElement) return;
  const steps = { ArrowUp: 1, ArrowRight: 1, ArrowDown: -1, ArrowLeft: -1, PageUp: 5, PageDown: -5 };
  if (event.key in steps) {
    showSlice(state.index + steps[event.key]);
  } else if (event.key === "Home") {
    showSlice(0);
  } else if (event.key === "End") {
    showSlice(state.count - 1);
  } else {
    return;
  }
  event.preventDefault();
}

function init() {
  const keyInput = $("api-key");
  keyInput.value = sessionStorage.getItem("ich-api-key") || "";
  keyInput.addEventListener("change", () => sessionStorage.setItem("ich-api-key", keyInput.value.trim()));
  $("upload-form").addEventListener("submit", (event) => {
    event.preventDefault();
    const file = $("upload-file").files[0];
    if (file) upload(file);
  });
  $("open-form").addEventListener("submit", (event) => {
    event.preventDefault();
    const id = $("study-id").value.trim();
    if (!id) return;
    history.replaceState(null, "", "/viewer?study=" + encodeURIComponent(id));
    openStudy(id);
  });
  $("slider").addEventListener("input", (event) => showSlice(Number(event.target.value)));
  $("window").addEventListener("change", () => showSlice(state.index));
  $("outline").addEventListener("change", () => showSlice(state.index));
  $("curve").addEventListener("click", curveClick);
  $("viewport").addEventListener("wheel", (event) => {
    event.preventDefault();
    showSlice(state.index + (event.deltaY > 0 ? 1 : -1));
  }, { passive: false });
  document.addEventListener("keydown", onKey);
  const id = new URLSearchParams(location.search).get("study");
  if (id) openStudy(id);
}

document.addEventListener("DOMContentLoaded", init);
